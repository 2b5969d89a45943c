"""The packed parts of a session's state, each the only code that knows its layout.

To keep a session near 2 KiB the state packs its windows into flat arrays and tuples; each
part wraps one such value with the methods the fold, the health rules, the snapshot and the
changelog need (`add`, `expire`, `items`, `to_wire` / `from_wire`, ...), so no neighbour
slices a layout (STYLE.md principle 13).
"""
