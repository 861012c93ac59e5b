"""The model zoo: small image and text towers trained here, on ``shapes``, with a known training history.

No offline pretrained pair carries colour and shape meaning to held-out values (docs/evidence.md), so the
evidence needs pairs whose answer is known by construction: towers trained together (symmetric InfoNCE, as
CLIP), the same towers trained alone or not at all, and graded doses in between. Each tower is named by a
recipe, ``zoo:shapes?tower=vision&mode=joint&seed=0&steps=600`` (``phasecore.zoo.recipe``, torch-free), trained
on first use by ``phasecore.zoo.train`` and cached as safetensors; ``phasecore.sources.zoo_source`` loads it as
an encoder like any other source.

- ``recipe``: the grammar, its checks, the run a tower belongs to, the training-cost estimate (no torch);
- ``vocab``: the word vocabulary of the ``shapes`` captions and the tokenizer (no torch);
- ``towers``: the networks (a GroupNorm CNN; a transformer and a GRU over words);
- ``train``: the trainer (joint, unimodal, random) and the weight cache.
"""
