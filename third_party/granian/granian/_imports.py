try:
    import anyio
except ImportError:
    anyio = None

try:
    import dotenv
except ImportError:
    dotenv = None

try:
    import setproctitle
except ImportError:
    setproctitle = None

try:
    import watchfiles
except ImportError:
    watchfiles = None
