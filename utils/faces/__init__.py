"""Faces in: read an image safely, detect faces with dlib, align them OpenFace-style, and keep a
dataset's aligned faces in a cache. Open align.py first, then cache.py."""
