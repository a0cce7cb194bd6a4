"""Vector files in other formats: GGUF control vectors and other libraries' vectors (this package's
safetensors format lives with ``SteeringVector``)."""
