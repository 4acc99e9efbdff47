from django.urls import path

from webapp.experiments import views

urlpatterns = [
    path("", views.experiment_list, name="experiment_list"),
    path("experiments/new/", views.experiment_new, name="experiment_new"),
    path("experiments/<int:pk>/", views.experiment_detail, name="experiment_detail"),
    path("experiments/<int:pk>/status.json", views.experiment_status, name="experiment_status"),
    path("experiments/<int:pk>/leaderboard/", views.experiment_leaderboard, name="experiment_leaderboard"),
    path("experiments/<int:pk>/points.json", views.experiment_points, name="experiment_points"),
    path("experiments/<int:pk>/cancel/", views.experiment_cancel, name="experiment_cancel"),
    path("experiments/<int:pk>/resume/", views.experiment_resume, name="experiment_resume"),
    path("experiments/<int:pk>/delete/", views.experiment_delete, name="experiment_delete"),
    path("experiments/<int:pk>/review/", views.experiment_review, name="experiment_review"),
    path("experiments/<int:pk>/extend/", views.experiment_extend, name="experiment_extend"),
    path("experiments/<int:pk>/retrain/", views.experiment_retrain, name="experiment_retrain"),
    path("experiments/<int:pk>/retrains/<int:number>/", views.retrain_detail, name="retrain_detail"),
    path("compare/", views.experiment_compare, name="experiment_compare"),
    path("review/", views.review_queue, name="review_queue"),
    path("workers/", views.worker_list, name="worker_list"),
    path("experiments/<int:pk>/calibrate/", views.experiment_calibrate, name="experiment_calibrate"),
    path("experiments/<int:pk>/calibrations/<int:calibration_id>/cancel/", views.calibration_cancel,
         name="calibration_cancel"),
    path("experiments/<int:pk>/trials/<int:number>/", views.trial_detail, name="trial_detail"),
    path("experiments/<int:pk>/trials/<int:number>/exports/<str:fmt>/", views.trial_export_request,
         name="trial_export_request"),
    path("experiments/<int:pk>/trials/<int:number>/exports/<str:fmt>/download", views.trial_export_download,
         name="trial_export_download"),
    path("experiments/<int:pk>/epochs/<int:epoch>/diagram.svg", views.search_epoch_diagram,
         name="search_epoch_diagram"),
]
