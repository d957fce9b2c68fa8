"""The MnistModel operator: reconciles a model server Deployment and its companions per MnistModel."""
