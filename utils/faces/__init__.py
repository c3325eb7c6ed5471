"""Faces in: read an image safely, detect faces with dlib, align them OpenFace-style, and keep a
dataset's aligned faces in a sharded, memory-mapped store. Open align.py first, then cache.py
(store.py holds the shards and the index, tsv_ingest.py streams an MS-Celeb TSV in)."""
