from ._granian import __version__
from ._loops import loops
from .server import Server as Granian


__all__ = ['__version__', 'loops', 'Granian']
