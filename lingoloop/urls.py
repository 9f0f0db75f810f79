from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from lingoloop.metrics import metrics_view
from tasks_admin.urls import queue_urls
from transcription.urls import api_urls, openai_urls, web_urls
from webhooks.urls import api_urls as webhook_api_urls


def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """Browsers and feed readers ask for /favicon.ico whatever the page says: the SVG icon
    (its static URL changes with its content, so the redirect is kept for a day only)."""
    response = HttpResponsePermanentRedirect(static("favicon.svg"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


urlpatterns = [
    path("favicon.ico", favicon, name="favicon"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file: the policy allows no inline
    # script (CONTENT_SECURITY_POLICY in settings.py).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include(api_urls)),
    path("api/", include(queue_urls)),
    path("api/", include(webhook_api_urls)),
    # OpenAI's audio API, for the clients that speak it (transcription/openai_api.py).
    path("v1/", include(openai_urls)),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include(web_urls)),
]

handler404 = "lingoloop.errors.not_found"
handler500 = "lingoloop.errors.server_error"
