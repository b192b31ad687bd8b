"""The pixel-space baseline: an RGB point cloud that grows with every frame.

This is the memory of Gen3C, VMem and Spatia: every valid pixel of every written
frame becomes a coloured 3D point, with no merging, and a new view is rendered by
z-buffered splatting at full image resolution (their pipelines then re-encode the
rendering with the VAE, a cost not counted here). It is built to be fast --
amortised-doubling buffers, batched projection, blockwise splatting that bounds
peak memory -- because every speed and memory claim of the latent cache is
measured against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mirage_gym.geometry import points_to_cells, project
from mirage_gym.memory.checks import check_intrinsics, check_mask, check_poses, check_scenes, check_tensor, lift_valid
from mirage_gym.memory.zbuffer import new_zbuffer, resolve, splat

__all__ = ["PointCloudMemory"]

# Points projected at once by a read: bounds the temporaries (about 100 bytes a point).
_BLOCK = 1 << 21


class _Cloud:
    """Growing buffers of one scene: ``xyz`` float32 ``[capacity, 3]``, ``rgb`` uint8 ``[capacity, 3]``."""

    def __init__(self, device: torch.device) -> None:
        self.xyz = torch.empty(0, 3, dtype=torch.float32, device=device)
        self.rgb = torch.empty(0, 3, dtype=torch.uint8, device=device)
        self.size = 0

    def append(self, xyz: Tensor, rgb: Tensor) -> None:
        needed = self.size + xyz.shape[0]
        if needed > self.xyz.shape[0]:
            capacity = max(needed, 2 * self.xyz.shape[0], 1024)
            for name in ("xyz", "rgb"):
                old = getattr(self, name)
                grown = old.new_empty((capacity, 3))
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        self.xyz[self.size : needed] = xyz
        self.rgb[self.size : needed] = rgb
        self.size = needed


class PointCloudMemory:
    """Every written pixel as a coloured world point, per scene, rendered by splatting.

    ``write`` stores each valid pixel (finite depth ``> 0``, and ``keep`` if given) of
    every frame: the memory grows linearly with the frames written, as in the
    pixel-space designs it stands for. ``read`` projects all points of the target's
    scene, drops those behind the camera or outside the image, and keeps the nearest
    per pixel (ties: the earliest written point).

    ``nbytes`` counts the bytes of the stored points (15 a point), not the slack of the
    growing buffers, so comparisons never overstate the baseline's footprint.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device("cpu" if device is None else device)
        self._clouds: dict[int, _Cloud] = {}

    def __len__(self) -> int:
        return sum(cloud.size for cloud in self._clouds.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the stored points (xyz float32 + rgb uint8)."""
        return len(self) * (3 * 4 + 3)

    def num_points(self, scene: int | None = None) -> int:
        if scene is None:
            return len(self)
        cloud = self._clouds.get(self._check_scene(scene))
        return 0 if cloud is None else cloud.size

    @staticmethod
    def _check_scene(scene: object) -> int:
        if isinstance(scene, bool) or not isinstance(scene, int) or scene < 0:
            raise ValueError(f"scene must be a non-negative int, got {scene!r}")
        return scene

    def points(self, scene: int = 0) -> tuple[Tensor, Tensor]:
        """World points ``[P, 3]`` and colours ``[P, 3]`` uint8 of one scene (copies)."""
        cloud = self._clouds.get(self._check_scene(scene))
        if cloud is None:
            return torch.empty(0, 3, device=self.device), torch.empty(0, 3, dtype=torch.uint8, device=self.device)
        return cloud.xyz[: cloud.size].clone(), cloud.rgb[: cloud.size].clone()

    def clear(self, scene: int | None = None) -> None:
        """Forget one scene, or all of them with ``None``."""
        if scene is None:
            self._clouds.clear()
        else:
            self._clouds.pop(self._check_scene(scene), None)

    def write(
        self,
        rgb: Tensor,
        depth: Tensor,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        keep: Tensor | None = None,
        scene: Tensor | int | None = None,
    ) -> None:
        """Append the valid pixels of ``N`` frames.

        Args:
            rgb: ``[N, H, W, 3]`` uint8. depth: ``[N, H, W]`` metres (non-finite or ``<= 0``: empty).
            cam_to_world: ``[N, 4, 4]``. intrinsics: ``[3, 3]`` or ``[N, 3, 3]`` pixel camera.
            keep: ``[N, H, W]`` bool or ``None``. scene: ``[N]`` ids, an int, or ``None`` (0).
        """
        rgb = check_tensor("rgb", rgb, 4)
        n, h, w, ch = rgb.shape
        if ch != 3 or rgb.dtype != torch.uint8:
            raise ValueError(f"rgb must be uint8 [N, H, W, 3], got {rgb.dtype} {tuple(rgb.shape)}")
        depth = check_tensor("depth", depth, 3)
        if tuple(depth.shape) != (n, h, w) or not depth.is_floating_point():
            raise ValueError(f"depth must be floating point with shape {(n, h, w)}, got {depth.dtype} {tuple(depth.shape)}")
        poses = check_poses("cam_to_world", cam_to_world, n).to(self.device)
        k = check_intrinsics("intrinsics", intrinsics, n).to(self.device)
        if keep is not None:
            keep = check_mask("keep", keep, (n, h, w)).to(self.device)
        scene_ids = check_scenes("scene", scene, n, 2**31, self.device)

        valid, points = lift_valid(depth, keep, k, poses)
        rgb = rgb.to(self.device)
        for s in torch.unique(scene_ids).tolist():  # one append per scene, not per point
            frames = scene_ids == s
            sel = valid[frames]
            cloud = self._clouds.setdefault(s, _Cloud(self.device))
            cloud.append(points[frames][sel], rgb[frames][sel])

    def read(
        self,
        cam_to_world: Tensor,
        intrinsics: Tensor,
        height: int,
        width: int,
        scene: Tensor | int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Render ``M`` views: ``rgb`` ``[M, H, W, 3]`` uint8 (0 where empty) and ``mask`` ``[M, H, W]``."""
        poses = check_tensor("cam_to_world", cam_to_world, 3)
        m = poses.shape[0]
        poses = check_poses("cam_to_world", poses, m).to(self.device)
        k = check_intrinsics("intrinsics", intrinsics, m).to(self.device)
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        scene_ids = check_scenes("scene", scene, m, 2**31, self.device)

        pixels = height * width
        zbuffer = new_zbuffer(m * pixels, self.device)
        for view in range(m):  # per view and block: bounded temporaries, no per-point loop
            cloud = self._clouds.get(int(scene_ids[view]))
            if cloud is None:
                continue
            for start in range(0, cloud.size, _BLOCK):
                stop = min(start + _BLOCK, cloud.size)
                uv, z = project(cloud.xyz[None, start:stop], k[view : view + 1], poses[view : view + 1])
                cells, valid = points_to_cells(uv[0], z[0], height, width)
                index = torch.nonzero(valid)[:, 0]
                flat = view * pixels + cells[index, 0] * width + cells[index, 1]
                splat(zbuffer, flat, z[0, index], index + start)
        winner, _, mask = resolve(zbuffer)
        rgb = torch.zeros(m * pixels, 3, dtype=torch.uint8, device=self.device)
        # Winner indices point into the cloud of each view's scene.
        for view in range(m):
            cloud = self._clouds.get(int(scene_ids[view]))
            if cloud is None:
                continue
            rows = slice(view * pixels, (view + 1) * pixels)
            hit = mask[rows]
            rgb[rows][hit] = cloud.rgb[winner[rows][hit]]
        return rgb.view(m, height, width, 3), mask.view(m, height, width)
