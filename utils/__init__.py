"""Library code behind the entry scripts, one package per pipeline stage: faces (detect, align,
store), datasets, training, evaluation, recognition. Start with faces/align.py; the shared helpers
(paths, atomic writes, downloads, embedding a batch) sit at this level."""
