"""Sizes and a tokenizer for random-weight presets, trained in memory (no download)."""

from __future__ import annotations

from typing import Any


def tower(hidden: int, layers: int, heads: int, **extra: int) -> dict[str, int]:
    """Transformer sizes for a preset's config (MLP 4x wide, as in ViT/BERT/CLIP)."""
    sizes = {"hidden_size": hidden, "intermediate_size": 4 * hidden}
    return {**sizes, "num_hidden_layers": layers, "num_attention_heads": heads, **extra}


def build_tokenizer(vocab_size: int, max_length: int) -> Any:
    """A real byte-level BPE tokenizer trained in memory, so no download is needed.

    Byte-level means any text encodes (no unknown tokens). Ids: 0 = bos, 1 = eos,
    2 = pad; eos is deliberately not id 2, which CLIP's text model treats as the
    legacy "pool at the largest id" convention.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    bos, eos, pad = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[bos, eos, pad],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n"), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, 0), (eos, 1)]
    )
    fast_tokenizer: Any = PreTrainedTokenizerFast  # untyped in transformers' stubs
    return fast_tokenizer(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_max_length=max_length,
    )


# Caption-like English, enough for a few hundred BPE merges of everyday words.
_CORPUS = """a photo of a cat sitting on a wooden table next to a window
a dog running across the green grass in the park on a sunny day
a close up picture of a red car parked in front of an old house
two people walking along the beach at sunset with the ocean behind them
a bowl of fresh fruit with apples oranges bananas and grapes
a city street at night with bright lights and tall buildings
a small boat floating on a calm blue lake surrounded by mountains
a child playing with a ball in the snow wearing a warm winter coat
a plate of food with rice chicken and vegetables on a white table
an airplane flying high in the clear sky above the clouds
a black and white drawing of a horse standing in a field
a group of friends sitting around a fire in the forest at night
a bicycle leaning against a brick wall on a quiet road
a yellow flower growing between the rocks near the river
a man reading a book on a bench under a large tree
a woman holding an umbrella in the rain on a busy street
a kitchen with a stove a sink and a refrigerator
a bird perched on the branch of a tree in the spring
a train crossing a bridge over a wide river in the evening
a computer keyboard and a mouse on a desk in an office
a painting of a landscape with hills houses and a church
a baby sleeping in a bed with soft blankets and a toy bear
a pizza with cheese tomatoes and olives cut into slices
a soccer player kicking the ball during a game in a stadium
the face of a smiling person looking at the camera
a screenshot of a document with text and a chart
a diagram showing the parts of a machine
a logo on a sign outside a shop in the town centre
a cup of coffee and a piece of cake on a small round table
an old map of the world with blue seas and brown land
photo picture image drawing painting sketch illustration rendering
red orange yellow green blue purple pink brown black white grey gold silver
one two three four five six seven eight nine ten many several few
big small large tiny tall short long wide narrow bright dark light heavy
cat dog horse cow sheep bird fish bear elephant lion tiger monkey
car truck bus train plane boat ship bicycle motorcycle road bridge street
man woman boy girl child baby person people family friend team crowd
house building room door window wall floor roof garden yard kitchen
tree flower grass leaf forest mountain river lake sea beach sky cloud sun
food fruit apple banana orange bread cake pizza coffee tea water milk
"""
