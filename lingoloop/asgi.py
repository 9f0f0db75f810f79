"""ASGI entry point: daphne serves it (`runserver` too, since daphne is an installed app).

Channels' ProtocolTypeRouter is the one routing layer. HTTP goes to Django, behind a body-size
limit that refuses oversized uploads while they stream; the SSE streams (views marked
`long_lived`) are served beside Django's handler, without its middleware chain (see
lingoloop.streaming). There is no second push path.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from lingoloop.limits import BodySizeLimit  # noqa: E402
from lingoloop.streaming import LongLivedRoutes  # noqa: E402

application = ProtocolTypeRouter({"http": BodySizeLimit(LongLivedRoutes(django_asgi_app))})
