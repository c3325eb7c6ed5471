"""Datasets in: folder-per-identity trees, LFW and its protocol files, and the FaceScrub and
MS-Celeb-1M readers and downloaders. Open folders.py first, then lfw.py."""
