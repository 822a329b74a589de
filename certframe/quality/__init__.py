"""Quality of a denoiser on its own: PSNR / SSIM of denoised images and the clean segmenter's Dice on them.

``image``     PSNR and SSIM on ``[B, C, H, W]`` images in [0, 1]
``denoiser``  the quality table of ``certframe evaluate denoiser`` (t*, per-sigma rows)
"""
