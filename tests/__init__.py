from tests import typecheck as typecheck  # the jaxtyping import hook reaches it as an attribute
