from django.urls import path

from webapp.experiments import views

urlpatterns = [
    path("", views.experiment_list, name="experiment_list"),
    path("experiments/new/", views.experiment_new, name="experiment_new"),
    path("experiments/<int:pk>/", views.experiment_detail, name="experiment_detail"),
    path("experiments/<int:pk>/status.json", views.experiment_status, name="experiment_status"),
    path("experiments/<int:pk>/points.json", views.experiment_points, name="experiment_points"),
    path("experiments/<int:pk>/cancel/", views.experiment_cancel, name="experiment_cancel"),
    path("experiments/<int:pk>/resume/", views.experiment_resume, name="experiment_resume"),
    path("experiments/<int:pk>/delete/", views.experiment_delete, name="experiment_delete"),
    path("experiments/<int:pk>/review/", views.experiment_review, name="experiment_review"),
    path("review/", views.review_queue, name="review_queue"),
    path("workers/", views.worker_list, name="worker_list"),
    path("experiments/<int:pk>/calibrate/", views.experiment_calibrate, name="experiment_calibrate"),
    path("experiments/<int:pk>/trials/<int:number>/", views.trial_detail, name="trial_detail"),
    path("experiments/<int:pk>/trials/<int:number>/model.zip", views.trial_export, name="trial_export"),
    path("experiments/<int:pk>/epochs/<int:epoch>/diagram.svg", views.search_epoch_diagram,
         name="search_epoch_diagram"),
]
