"""Weight converters between other projects' models and recurlm models.

``formats`` registers one ``Format`` per foreign checkpoint layout (transformers RecurrentGemma and
xLSTM, flash-linear-attention RWKV-6/7 and HGRN2, BlinkDL ``.pth``, the ``xlstm`` package's
``xLSTMLarge``) and runs ``recurlm-convert import`` / ``export-hf`` (``cli``) over them with the
streaming reader and sharded writer of ``io``. The per-family modules also keep the in-memory
converters the model tests use (fla's models run on CPU by ``tests/helpers/fla_cpu.py``).
"""
