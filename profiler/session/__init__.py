"""The on-disk session stream: layout under ``$GPUMEM_HOME``, the writer, the reader."""
