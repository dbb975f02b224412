"""3x3 'SAME' convolutions as Winograd F(2x2, 3x3): fewer multiplications on XLA:CPU.

Why: XLA:CPU's direct convolutions top out at its matmul speed (~200 GFLOP/s on the
reference machine) while oneDNN (Keras/PyTorch) reaches 210-250. Winograd's minimal
filtering computes each 2x2 output tile from a 4x4 input tile with 16 multiplications per
(input, output) channel pair instead of 36, i.e. 2.25x fewer: the convolution becomes 16
independent [tiles, C_in] x [C_in, C_out] matmuls between cheap add/subtract transforms
(Lavin & Gray 2016). It pays where channels are wide (the matmuls dominate the
memory-bound transforms): the VGG16 @112 frozen train step goes from 23.9 to 33.6 img/s on
the reference machine with it on every layer of >= 128 output channels (`vgg.Conv3x3`,
BUILD_NOTES.md "CPU speed"). The result
differs from the direct convolution by float32 rounding only (~1e-6 relative).

Formulation notes (each measured): the 16 input tiles are computed as separate arrays
feeding separate matmuls. Stacking them into one [16, M, C] batched matmul made XLA:CPU
emit a slow concatenation (the 56x56x128 layer's input transform took longer than its
matmuls).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# F(2, 3) transforms: input B^T (4x4, entries 0/+-1), filter G (4x3), output A^T (2x4).
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def _input_transform(r: list) -> list:
    """B^T applied along one axis to 4 overlapping rows/columns of a tile."""
    return [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]


def _output_transform(m: list) -> list:
    """A^T applied along one axis: 4 transformed values -> 2 outputs."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def filter_transform(kernel: jax.Array) -> jax.Array:
    """HWIO [3, 3, C, K] -> [4, 4, C, K] = G g G^T (computed in float32)."""
    g = jnp.asarray(_G)
    return jnp.einsum("iu,uvck,jv->ijck", g, kernel.astype(jnp.float32), g)


@jax.custom_vjp
def conv3x3_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Equivalent of lax.conv_general_dilated(x, kernel, (1, 1), 'SAME') for NHWC x and
    HWIO kernel [3, 3, C, K], computed with Winograd F(2x2, 3x3). Odd sizes are padded
    with zeros at the bottom/right (exact: those rows only feed the cropped outputs).

    Gradients (custom VJP): the input gradient of a stride-1 'SAME' 3x3 convolution is
    the same convolution of the output gradient with the spatially flipped, in/out-swapped
    kernel, so it runs as Winograd too; autodiff of the forward would instead transpose
    the strided tile slices into scatter-adds (fine-tune step 7.7 -> 8.4 img/s measured).
    The kernel gradient is autodiff of the Winograd form with respect to the kernel."""
    return _winograd(x, kernel)


def _conv3x3_fwd(x: jax.Array, kernel: jax.Array):
    return _winograd(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    dx = _winograd(g, kernel[::-1, ::-1].transpose(0, 1, 3, 2))
    _, kernel_vjp = jax.vjp(lambda k: _winograd(x, k), kernel)
    return dx.astype(x.dtype), kernel_vjp(g)[0]


conv3x3_same.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _winograd(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The forward computation of `conv3x3_same`."""
    n, h, w, c = x.shape
    k = kernel.shape[-1]
    th, tw = (h + 1) // 2, (w + 1) // 2  # output tiles per axis
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
    u = filter_transform(kernel).astype(x.dtype)
    rows = _input_transform([xp[:, i:i + 2 * th:2] for i in range(4)])
    m = [[None] * 4 for _ in range(4)]
    for i, row in enumerate(rows):
        tiles = _input_transform([row[:, :, j:j + 2 * tw:2] for j in range(4)])
        for j, tile in enumerate(tiles):
            m[i][j] = (tile.reshape(-1, c) @ u[i, j]).reshape(n, th, tw, k)
    cols = [_output_transform([m[i][j] for i in range(4)]) for j in range(4)]  # cols[j][p]
    out = [[_output_transform([cols[j][p] for j in range(4)])[q] for q in range(2)] for p in range(2)]
    y = jnp.stack([jnp.stack(out[p], axis=3) for p in range(2)], axis=2)  # [n, th, 2, tw, 2, k]
    return y.reshape(n, 2 * th, 2 * tw, k)[:, :h, :w]
