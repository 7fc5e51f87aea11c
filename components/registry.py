"""The optional last step: upload the exported SavedModel to the Vertex AI Model Registry."""

from kfp.dsl import Input, Model


def register_model(saved_model: Input[Model], display_name: str, serving_image: str,
                   project: str = "{{$.pipeline_google_cloud_project_id}}",
                   location: str = "{{$.pipeline_google_cloud_location}}") -> str:
    """Uploads the SavedModel to the Vertex AI Model Registry with a TensorFlow serving container.

    Args:
      saved_model: The export_model output; its metadata `export_uri` names the SavedModel.
      display_name: The model's name in the registry.
      serving_image: A prebuilt Vertex AI TensorFlow prediction image.
      project: The Google Cloud project; by default the pipeline run's.
      location: The region; by default the pipeline run's.

    Returns:
      The resource name of the uploaded model.
    """
    from google.cloud import aiplatform

    aiplatform.init(project=project, location=location)
    model = aiplatform.Model.upload(display_name=display_name, artifact_uri=saved_model.metadata["export_uri"],
                                    serving_container_image_uri=serving_image)
    return model.resource_name
