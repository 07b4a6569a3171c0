"""The methods every entry point offers, by their options: importing this module registers the built-in
ones. Torch-free (`pruning.methods.options`); the methods themselves are `pruning.methods.registry`'s."""

from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.options import METHOD_OPTIONS, MethodOptions, options_for, register_options

# flap, random and wanda-sp take no options of their own
for _method in ("random", "wanda-sp", "flap"):
    register_options(_method)(MethodOptions)

__all__ = ["METHOD_OPTIONS", "BonsaiOptions", "MethodOptions", "options_for", "register_options"]
