"""ASGI entry point: daphne serves it (`runserver` too, since daphne is an installed app).

Channels' ProtocolTypeRouter is the one routing layer. HTTP goes to Django, behind a body-size
limit that refuses oversized uploads while they stream (and a 507 for a body the disk has no
room for); the SSE streams (views marked
`long_lived`) are served beside Django's handler, without its middleware chain (see
lingoloop.streaming). There is no second push path. In front of it all, every request gets
its `X-Request-ID` (kept from the client when sane, made otherwise, and sent back), the id its
log lines carry (lingoloop.logs): the streams too, though they skip Django's middleware.
After an upload, the memory it freed is handed back to the system (lingoloop.malloc).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lingoloop.settings")
django_asgi_app = get_asgi_application()

from asgi_correlation_id import CorrelationIdMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402

from lingoloop.limits import BodySizeLimit, DiskFullAnswer  # noqa: E402
from lingoloop.logs import is_sane_request_id, new_request_id  # noqa: E402
from lingoloop.malloc import ReleaseAfterLargeBodies  # noqa: E402
from lingoloop.streaming import LongLivedRoutes  # noqa: E402

application = CorrelationIdMiddleware(
    ProtocolTypeRouter(
        {
            "http": ReleaseAfterLargeBodies(
                BodySizeLimit(DiskFullAnswer(LongLivedRoutes(django_asgi_app)))
            )
        }
    ),
    header_name="X-Request-ID",
    validator=is_sane_request_id,
    generator=new_request_id,
)
