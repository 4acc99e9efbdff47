"""Routes of the REST API. The API authenticates itself (401 for anonymous), so the site's login redirect
does not apply to it; the docs page is a page and needs a login."""
from django.contrib.auth.decorators import login_not_required, login_required
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from webapp.api import views

router = SimpleRouter()
router.register("experiments", views.ExperimentViewSet, basename="api-experiment")
router.register("datasets", views.DatasetViewSet, basename="api-dataset")
router.register("teams", views.TeamViewSet, basename="api-team")

urlpatterns = [
    path("token/", views.TokenView.as_view(), name="api-token"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    *router.urls,
]
for pattern in urlpatterns:
    login_not_required(pattern.callback)
urlpatterns.append(path("docs/", login_required(SpectacularSwaggerView.as_view(url_name="api-schema")),
                        name="api-docs"))
