"""Training losses that are not segmentation losses (those come from MONAI in the engine).

`medseg.losses.image`: MSE, L1 and SSIM for image-to-image tasks and their weighted sums.
"""

from medseg.losses.image import IMAGE_LOSS_NAMES, ImageLoss, build_image_loss

__all__ = ["IMAGE_LOSS_NAMES", "ImageLoss", "build_image_loss"]
