"""The folders adapter (contract section 6): ``adapter`` watches; ``inbox`` takes each
settled file once (``layout`` reads names and sidecars), ``finish``/``output`` move it and
write its result, ``refits`` debounces sample refits, ``datasets``/``dataset_files`` follow
dataset folders owned by someone else, ``retention`` prunes old processed files."""
