"""Word lists and a tiny template grammar for synthetic sentences (es, it, en).

A sentence is  subject + verb + object + 0-2 extras  ("Mi hermana compra pan en el mercado.").
Noun phrases carry their own determiners and adjectives so no agreement rules are needed;
the meaning is often odd ("el gato escribe una carta"), which is fine for a speech corpus
whose point is varied, pronounceable text. 30 x 30 x 40 x 30^2 combinations per language
give far more distinct sentences than any synthetic set needs.
"""

import numpy as np

from s2s.errors import DataError

PARTS: dict[str, dict[str, list[str]]] = {
    "es": {
        "subject": [
            "Marta", "Pablo", "Lucía", "Javier", "mi hermana", "mi hermano", "el niño", "la niña",
            "el profesor", "la profesora", "el médico", "la vecina", "el perro", "el gato negro",
            "mi abuela", "mi abuelo", "el cocinero", "la cantante", "un turista", "una estudiante",
            "el alcalde", "la doctora", "mi amigo", "mi amiga", "el panadero", "la pintora",
            "el conductor", "la periodista", "el jardinero", "la bibliotecaria",
        ],
        "verb": [
            "compra", "busca", "mira", "prepara", "lleva", "quiere", "encuentra", "lee",
            "escribe", "abre", "cierra", "limpia", "pinta", "vende", "recibe", "olvida",
            "necesita", "guarda", "pide", "trae", "come", "bebe", "dibuja", "espera",
            "toca", "usa", "cuida", "prueba", "elige", "recuerda",
        ],
        "object": [
            "pan", "agua fresca", "una manzana roja", "el periódico", "una carta larga",
            "la ventana", "un libro nuevo", "la puerta azul", "un regalo", "la cena",
            "un café caliente", "una bicicleta", "el coche viejo", "una sopa de tomate",
            "la guitarra", "un sombrero", "las llaves", "una mesa de madera", "el mapa",
            "una naranja", "la maleta", "un cuadro bonito", "la camisa blanca", "un pastel",
            "el teléfono", "una flor amarilla", "la cuenta", "un vaso de leche", "el paraguas",
            "una canción", "la tarea", "un billete de tren", "el queso", "una caja pequeña",
            "la lámpara", "un cuaderno", "el jabón", "una foto antigua", "la llave dorada",
            "un plato de arroz",
        ],
        "extra": [
            "en el mercado", "por la mañana", "todos los días", "en la cocina", "esta tarde",
            "con mucho cuidado", "antes de cenar", "en la playa", "cerca del río", "sin prisa",
            "el lunes", "en el parque", "después del trabajo", "junto a la puerta", "otra vez",
            "en la ciudad", "por la noche", "con su familia", "en verano", "muy despacio",
            "en la escuela", "para mañana", "en el tren", "a las ocho", "con alegría",
            "en el jardín", "cada semana", "en silencio", "de vez en cuando", "sin decir nada",
        ],
    },
    "it": {
        "subject": [
            "Marco", "Giulia", "Luca", "Francesca", "mia sorella", "mio fratello", "il bambino",
            "la bambina", "il professore", "la maestra", "il medico", "la vicina", "il cane",
            "il gatto nero", "mia nonna", "mio nonno", "il cuoco", "la cantante", "un turista",
            "una studentessa", "il sindaco", "la dottoressa", "il mio amico", "la mia amica",
            "il fornaio", "la pittrice", "l'autista", "la giornalista", "il giardiniere",
            "la bibliotecaria",
        ],
        "verb": [
            "compra", "cerca", "guarda", "prepara", "porta", "vuole", "trova", "legge", "desidera",
            "scrive", "apre", "chiude", "pulisce", "dipinge", "vende", "riceve", "dimentica",
            "conserva", "chiede", "prende", "mangia", "beve", "disegna",
            "aspetta", "suona", "usa", "cura", "assaggia", "sceglie", "ricorda",
        ],
        "object": [
            "il pane", "acqua fresca", "una mela rossa", "il giornale", "una lettera lunga",
            "la finestra", "un libro nuovo", "la porta blu", "un regalo", "la cena",
            "un caffè caldo", "una bicicletta", "la macchina vecchia", "una zuppa di pomodoro",
            "la chitarra", "un cappello", "le chiavi", "un tavolo di legno", "la mappa",
            "un'arancia", "la valigia", "un quadro bello", "la camicia bianca", "una torta",
            "il telefono", "un fiore giallo", "il conto", "un bicchiere di latte", "l'ombrello",
            "una canzone", "i compiti", "un biglietto del treno", "il formaggio",
            "una scatola piccola", "la lampada", "un quaderno", "il sapone", "una foto antica",
            "la chiave dorata", "un piatto di riso",
        ],
        "extra": [
            "al mercato", "la mattina", "ogni giorno", "in cucina", "questo pomeriggio",
            "con molta cura", "prima di cena", "sulla spiaggia", "vicino al fiume", "senza fretta",
            "lunedì", "nel parco", "dopo il lavoro", "accanto alla porta", "di nuovo",
            "in città", "di sera", "con la famiglia", "in estate", "molto lentamente",
            "a scuola", "per domani", "sul treno", "alle otto", "con gioia", "in giardino",
            "ogni settimana", "in silenzio", "ogni tanto", "senza dire niente",
        ],
    },
    "en": {
        "subject": [
            "Mary", "John", "Lucy", "Peter", "my sister", "my brother", "the boy", "the girl",
            "the teacher", "the old man", "the doctor", "our neighbour", "the dog",
            "the black cat", "my grandmother", "my grandfather", "the cook", "the singer",
            "a tourist", "a student", "the mayor", "the nurse", "my friend", "her friend",
            "the baker", "the painter", "the driver", "the reporter", "the gardener",
            "the librarian",
        ],
        "verb": [
            "buys", "finds", "watches", "prepares", "carries", "wants", "reads", "writes",
            "opens", "closes", "cleans", "paints", "sells", "receives", "forgets", "needs",
            "keeps", "asks for", "brings", "eats", "drinks", "draws", "waits for", "plays",
            "uses", "fixes", "tastes", "chooses", "remembers", "takes",
        ],
        "object": [
            "the bread", "fresh water", "a red apple", "the newspaper", "a long letter",
            "the window", "a new book", "the blue door", "a present", "the dinner",
            "a hot coffee", "a bicycle", "the old car", "a tomato soup", "the guitar", "a hat",
            "the keys", "a wooden table", "the map", "an orange", "the suitcase",
            "a nice picture", "the white shirt", "a cake", "the phone", "a yellow flower",
            "the bill", "a glass of milk", "the umbrella", "a song", "the homework",
            "a train ticket", "the cheese", "a small box", "the lamp", "a notebook", "the soap",
            "an old photo", "the golden key", "a plate of rice",
        ],
        "extra": [
            "at the market", "in the morning", "every day", "in the kitchen", "this afternoon",
            "with great care", "before dinner", "on the beach", "near the river",
            "without hurry", "on Monday", "in the park", "after work", "next to the door",
            "once again", "in the city", "at night", "with the family", "in summer",
            "very slowly", "at school", "for tomorrow", "on the train", "at eight",
            "with joy", "in the garden", "every week", "in silence", "now and then",
            "without a word",
        ],
    },
}

LANGUAGES = tuple(PARTS)


def vocabulary(lang: str) -> list[str]:
    """Every word of `lang`'s word lists, lowercased and sorted (es/it: about 175 words; "l'autista"
    gives two, "l'" and "autista")."""
    if lang not in PARTS:
        raise DataError(f"no word lists for language {lang!r}; known: {', '.join(LANGUAGES)}")
    return sorted({w.lower() for phrases in PARTS[lang].values() for p in phrases for w in p.replace("'", "' ").split()})


def make_word_string(lang: str, rng: np.random.Generator, min_words: int = 4, max_words: int = 8) -> str:
    """`min_words..max_words` words of `vocabulary(lang)` drawn uniformly and independently.

    The miniature's text (s2s/tiny_tts.py): with no grammar, nothing but the text tells which word
    comes next, so a frozen TTS model's loss given the text and given none differ by what reading is worth.
    """
    if not 1 <= min_words <= max_words:
        raise DataError(f"need 1 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    words = vocabulary(lang)
    text = " ".join(words[i] for i in rng.integers(len(words), size=int(rng.integers(min_words, max_words + 1))))
    return text[0].upper() + text[1:] + "."


def make_sentence(lang: str, rng: np.random.Generator, min_words: int = 3, max_words: int = 10) -> str:
    """One random sentence of `min_words..max_words` words in `lang` ("es", "it" or "en").

    Rejection-samples the template (subject verb object extra*) until the word count fits.
    """
    if lang not in PARTS:
        raise DataError(f"no sentence word lists for language {lang!r}; known: {', '.join(LANGUAGES)}")
    if not 2 <= min_words <= max_words:
        raise DataError(f"need 2 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    parts = PARTS[lang]
    pick = lambda kind: parts[kind][rng.integers(len(parts[kind]))]  # noqa: E731
    for _ in range(1000):
        n_extra = int(rng.integers(0, 3))
        words = [pick("subject"), pick("verb")]
        if rng.random() < 0.9 or n_extra:  # now and then an intransitive "Marta come."
            words.append(pick("object"))
        words += [pick("extra") for _ in range(n_extra)]
        if n_extra == 2 and words[-1] == words[-2]:
            continue
        text = " ".join(words)
        if min_words <= len(text.split()) <= max_words:
            return text[0].upper() + text[1:] + "."
    raise DataError(
        f"could not build a {lang} sentence of {min_words}..{max_words} words; "
        "the templates make 2..14 words, so choose a range inside that"
    )
