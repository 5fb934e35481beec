"""SpineXR Triage web app (Gradio). ``python app.py`` serves on 127.0.0.1:7860, or on GRADIO_SERVER_NAME /
GRADIO_SERVER_PORT (Hugging Face Spaces). Research use only - not a medical device. AGPL-3.0."""
from spine_ui.ui.app import main

if __name__ == "__main__":
    main()
