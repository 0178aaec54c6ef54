"""The paper's evaluation protocol as a library (``core``) and the ``drrn eval`` command (``runner``)."""
