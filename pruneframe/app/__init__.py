"""The ``pruneframe`` command line and the models it can name (``torchvision:NAME``, ``timm:NAME``, ``hf:...``, ``FILE.py:factory``)."""
