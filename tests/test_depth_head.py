"""The depth head on its own: shapes, range, what it sees, saving and bad input."""

import pytest
import torch

from mirage_gym.model.depth_head import DepthHead


def _far_cell_influence(head: DepthHead) -> float:
    """How much the token depth at one corner changes when the opposite corner's latent changes."""
    torch.manual_seed(0)
    z = torch.randn(1, 4, 16, 16)
    moved = z.clone()
    moved[..., -1, -1] += 5.0
    with torch.no_grad():
        return (head(z).token_depth[0, 0, 0] - head(moved).token_depth[0, 0, 0]).abs().item()


@pytest.mark.parametrize("context_levels, context_blocks", [(0, 1), (2, 1), (2, 3)])
def test_depth_is_in_range_at_token_and_pixel_resolution(context_levels: int, context_blocks: int) -> None:
    head = DepthHead(latent_channels=4, spatial_factor=4, hidden_channels=8, num_blocks=1,
                     context_levels=context_levels, context_blocks=context_blocks, min_depth=0.5, max_depth=8.0)
    out = head(torch.randn(3, 4, 5, 7) * 10)  # odd grids pass through the context path too
    assert out.token_depth.shape == (3, 5, 7)
    assert out.pixel_depth.shape == (3, 20, 28)
    for depth in (out.token_depth, out.pixel_depth):
        assert torch.isfinite(depth).all()
        assert depth.min() >= 0.5 and depth.max() <= 8.0


def test_context_levels_let_a_token_see_the_whole_view() -> None:
    # One residual block sees 5x5 cells: the far corner of a 16x16 grid is out of reach
    # without the context path, within reach with it.
    local = DepthHead(latent_channels=4, hidden_channels=8, num_blocks=1, context_levels=0)
    context = DepthHead(latent_channels=4, hidden_channels=8, num_blocks=1, context_levels=4)
    assert _far_cell_influence(local) == 0.0
    assert _far_cell_influence(context) > 0.0


def test_save_and_load_round_trip(tmp_path) -> None:
    head = DepthHead(latent_channels=4, hidden_channels=8, num_blocks=1, context_levels=2, context_blocks=2).eval()
    head.save_pretrained(tmp_path / "depth_head")
    loaded = DepthHead.from_pretrained(tmp_path / "depth_head").eval()
    assert loaded.config.context_levels == 2 and loaded.config.context_blocks == 2
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(z).pixel_depth, head(z).pixel_depth)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"context_levels": -1}, "context_levels"),
        ({"context_blocks": 0}, "context_blocks"),
        ({"spatial_factor": 6}, "power of two"),
        ({"min_depth": 2.0, "max_depth": 1.0}, "min_depth"),
        ({"latent_scale": 0.0}, "latent_scale"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DepthHead(latent_channels=4, **kwargs)


def test_latents_of_the_wrong_shape_are_named() -> None:
    head = DepthHead(latent_channels=4, hidden_channels=8, num_blocks=1)
    with pytest.raises(ValueError, match=r"latents must be \[N, 4, h, w\]"):
        head(torch.randn(1, 3, 8, 8))
