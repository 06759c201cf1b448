"""`python -m posttrain ...`: the same command as `posttrain ...`, for launchers that take a
module (`accelerate launch -m posttrain run recipes/chat.yaml`, `torchrun -m posttrain ...`)."""

from posttrain.cli import console_script

if __name__ == "__main__":
    console_script()
