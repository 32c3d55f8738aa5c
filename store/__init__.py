"""The block store (venti): scores, typed blocks, stores, hash trees and the block protocol.

store imports only the standard library and its third-party codecs (blake3, lmdb,
zstandard, pyfastcdc). Nothing of the rest of grid.
"""
