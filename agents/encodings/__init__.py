"""Page encodings: zero pages, zstd per batch, XBZRLE deltas against a cache
of sent pages (with its C core), and the per-consumer `BatchEncoder` that
picks among them. Pure functions and classes over numpy pages; the data path
calls them, they know nothing of links or Ray.
"""
