"""The runtime type checker pytest applies to lmscope (via jaxtyping's import hook).

beartype with PEP 484's numeric tower: an ``int`` is accepted where ``float`` is
annotated (``ModelConfig(rope_theta=10000)``), as the type system and our own config
validation allow.
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
