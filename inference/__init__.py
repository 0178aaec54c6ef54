"""Pipeline and batching: decode, tile, batch across requests, stitch, encode. No HTTP, no torch."""
