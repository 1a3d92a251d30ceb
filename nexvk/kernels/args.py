"""Argument checks shared by the kernel wrappers: a dispatch must never reach past a buffer."""


def check_extent(buf, offset, count, what):
    """Raise ValueError unless buf holds `count` words from `offset`."""
    if offset < 0 or offset + count > buf.size:
        raise ValueError(f"{what}: needs words {offset}..{offset + count} of {buf}, "
                         f"which holds {buf.size}")


def ceil_div(a, b):
    return -(-a // b)
