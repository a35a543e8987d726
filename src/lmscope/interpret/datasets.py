"""Small labelled text sets for the probing and steering studies, written for lmscope.

Every sentence here was written for lmscope (no external corpus, no licence to track).
The sentiment set is built from *matched pairs*: each positive sentence has a negative
twin about the same thing with the same structure ("The food was delicious and warm." /
"The food was awful and cold."), so that a probe or a neuron that separates the classes
has to track sentiment, not topic, length or punctuation.

`STEERING_PAIRS` are contrastive prompts in the style of activation addition (Turner et
al. 2023, "ActAdd"), whose canonical example is "Love" - "Hate".
"""

from __future__ import annotations

from dataclasses import dataclass

from lmscope.errors import LmscopeError, did_you_mean

#: (positive, negative) matched pairs; 40 of each.
_SENTIMENT_PAIRS: tuple[tuple[str, str], ...] = (
    ("I loved this film, it was wonderful.", "I hated this film, it was terrible."),
    ("The food was delicious and warm.", "The food was awful and cold."),
    ("What a beautiful, sunny morning.", "What a miserable, gloomy morning."),
    ("The staff were kind and helpful.", "The staff were rude and useless."),
    ("This book is a delight to read.", "This book is a chore to read."),
    ("I am so happy with my new phone.", "I am so unhappy with my new phone."),
    ("The concert was fantastic.", "The concert was dreadful."),
    ("She gave a brilliant performance.", "She gave a painful performance."),
    ("Our holiday was perfect from start to end.", "Our holiday was a disaster from start to end."),
    ("The hotel room was clean and comfortable.", "The hotel room was dirty and uncomfortable."),
    ("I enjoyed every minute of the game.", "I regretted every minute of the game."),
    ("The new park is lovely.", "The new park is ugly."),
    ("He is a generous and friendly neighbour.", "He is a selfish and hostile neighbour."),
    ("The service was quick and excellent.", "The service was slow and awful."),
    ("This is the best coffee in town.", "This is the worst coffee in town."),
    ("My exam went really well today.", "My exam went really badly today."),
    ("The garden looks gorgeous in spring.", "The garden looks horrible in spring."),
    ("I am grateful for your help.", "I am annoyed by your help."),
    ("The team played a superb match.", "The team played a pathetic match."),
    ("Their wedding was a joyful day.", "Their wedding was a sad day."),
    ("The movie had a charming story.", "The movie had a boring story."),
    ("I feel calm and content tonight.", "I feel angry and bitter tonight."),
    ("This software works beautifully.", "This software fails constantly."),
    ("The teacher was patient and encouraging.", "The teacher was impatient and harsh."),
    ("We had a great time at the beach.", "We had a miserable time at the beach."),
    ("The soup tasted fresh and lovely.", "The soup tasted stale and disgusting."),
    ("Everyone praised the new design.", "Everyone mocked the new design."),
    ("The trip was pleasant and relaxing.", "The trip was stressful and exhausting."),
    ("I adore this little cafe.", "I loathe this little cafe."),
    ("The song made me smile.", "The song made me cringe."),
    ("The results are impressive.", "The results are disappointing."),
    ("The puppy is sweet and playful.", "The puppy is nasty and aggressive."),
    ("The museum was fascinating.", "The museum was tedious."),
    ("My neighbours are wonderful people.", "My neighbours are horrible people."),
    ("The weather was glorious all week.", "The weather was dreadful all week."),
    ("The play was a triumph.", "The play was a failure."),
    ("I recommend this restaurant to everyone.", "I warn everyone about this restaurant."),
    ("The city felt safe and welcoming.", "The city felt dangerous and unwelcoming."),
    ("Her advice was wise and useful.", "Her advice was foolish and useless."),
    ("This was a truly happy ending.", "This was a truly tragic ending."),
)


@dataclass(frozen=True)
class LabelledTexts:
    """Texts with integer labels (1 = the property holds, 0 = it does not)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    #: What label 1 means, for tables and plots.
    positive: str
    description: str

    def __len__(self) -> int:
        return len(self.texts)

    def split(self) -> tuple[list[str], list[str]]:
        """(texts labelled 1, texts labelled 0)."""
        pos = [t for t, y in zip(self.texts, self.labels, strict=True) if y == 1]
        neg = [t for t, y in zip(self.texts, self.labels, strict=True) if y == 0]
        return pos, neg


def sentiment() -> LabelledTexts:
    """40 positive (label 1) and 40 negative (label 0) sentences in matched pairs."""
    texts = tuple(t for pair in _SENTIMENT_PAIRS for t in pair)
    labels = tuple(y for _ in _SENTIMENT_PAIRS for y in (1, 0))
    return LabelledTexts(
        name="sentiment",
        texts=texts,
        labels=labels,
        positive="positive sentiment",
        description="40 matched pairs of short positive/negative sentences written for lmscope",
    )


#: Contrastive (positive, negative) prompts for steering vectors, after ActAdd's
#: "Love" - "Hate"; the later pairs give a difference of means over several wordings.
STEERING_PAIRS: tuple[tuple[str, str], ...] = (
    ("Love", "Hate"),
    ("I love", "I hate"),
    ("I love you", "I hate you"),
    ("This is wonderful", "This is terrible"),
    ("I feel happy", "I feel sad"),
    ("What a great day", "What a terrible day"),
    ("You are kind", "You are cruel"),
    ("It was beautiful", "It was horrible"),
)

#: The labelled sets, by name (the CLI's ``--dataset``).
DATASETS = {"sentiment": sentiment}


def load_dataset(name: str) -> LabelledTexts:
    """A built-in labelled set by name (see `DATASETS`)."""
    if name not in DATASETS:
        raise LmscopeError(
            f"no built-in dataset {name!r}: choose one of {', '.join(DATASETS)}. "
            f"{did_you_mean(name, DATASETS)}".strip()
        )
    return DATASETS[name]()


__all__ = ["DATASETS", "STEERING_PAIRS", "LabelledTexts", "load_dataset", "sentiment"]
