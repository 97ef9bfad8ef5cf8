"""jaxgpt/core/muon.py against optax.contrib.muon, which it recomputes by shape: same state, same updates.

(The PyTorch reference check of the whole optimizer is test_optim.py's test_muon_steps_match_the_pytorch_reference.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt.core import muon


@st.composite
def matrix_trees(draw) -> dict[str, jax.ShapeDtypeStruct]:
    """A few 2-D leaves, some sharing a shape, some the transpose of another's, some square."""
    sides = st.integers(1, 12)
    shapes = draw(st.lists(st.tuples(sides, sides), min_size=1, max_size=4))
    shapes += [(n, m) for m, n in shapes[: draw(st.integers(0, len(shapes)))]]  # transposes: the same stack
    shapes += shapes[: draw(st.integers(0, len(shapes)))]  # repeats: the same stack
    return {f"w{i}": jax.ShapeDtypeStruct(shape, jnp.float32) for i, shape in enumerate(shapes)}


def random_like(tree, rng: np.random.Generator, scale: float = 1.0):
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), jnp.float32), tree)


@settings(max_examples=25, deadline=None)
@given(matrix_trees(), st.integers(1, 5), st.sampled_from([0.0, 0.9, 0.95]), st.sampled_from([0.0, 0.1]),
       st.integers(0, 2**32 - 1))
def test_updates_and_state_equal_optax_muon(shapes, ns_steps, beta, weight_decay, seed):
    """Three updates of muon.muon equal optax.contrib.muon's within float32 rounding (the products are the same;
    XLA may fuse the elementwise work around them differently), and so does the state after them."""
    rng = np.random.default_rng(seed)
    params = random_like(shapes, rng, 0.1)
    schedule = optax.linear_schedule(0.02, 0.01, 3)
    ours = muon.muon(schedule, beta=beta, ns_steps=ns_steps, weight_decay=weight_decay)
    theirs = optax.contrib.muon(schedule, ns_steps=ns_steps, beta=beta, weight_decay=weight_decay)
    ours_state, theirs_state = ours.init(params), theirs.init(params)
    for _ in range(3):
        grads = random_like(shapes, rng)
        ours_updates, ours_state = jax.jit(ours.update)(grads, ours_state, params)
        theirs_updates, theirs_state = jax.jit(theirs.update)(grads, theirs_state, params)
        ours_leaves = jax.tree.leaves((ours_updates, ours_state))
        for a, b in zip(ours_leaves, jax.tree.leaves((theirs_updates, theirs_state)), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_state_layout_is_optaxs_so_checkpoints_read_either_way():
    """The state tree (structure, shapes, dtypes) is optax.contrib.muon's: checkpoints written before jaxgpt
    computed Muon by shape restore into it, and the other way round."""
    params = {"a": jax.ShapeDtypeStruct((8, 32), jnp.float32), "b": jax.ShapeDtypeStruct((32, 8), jnp.float32)}
    ours = jax.eval_shape(muon.muon(0.02, beta=0.95, ns_steps=5, weight_decay=0.0).init, params)
    theirs = jax.eval_shape(optax.contrib.muon(0.02).init, params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert jax.tree.leaves(ours) == jax.tree.leaves(theirs)


def test_same_shaped_matrices_share_one_stack():
    """Four matrices of two shapes, (8, 32) and its transpose, make one Newton–Schulz batch of products, not four."""
    params = {name: jnp.ones(shape) for name, shape in
              (("a", (8, 32)), ("b", (32, 8)), ("c", (8, 32)), ("d", (32, 8)))}
    hlo = jax.jit(lambda t: muon.orthogonalize_by_shape(t, jnp.asarray((3.4445, -4.775, 2.0315)), 5)).lower(
        params).as_text()
    assert hlo.count("dot_general") == 3 * 5  # three products per iteration, each over the stack of four
    assert "tensor<4x8x32xf32>" in hlo


def test_orthogonalized_matrices_are_near_orthogonal():
    """The point of it: singular values near 1 (the quintic's 5 steps leave them in about [0.7, 1.2])."""
    rng = np.random.default_rng(0)
    tree = random_like({"wide": jax.ShapeDtypeStruct((16, 48), jnp.float32),
                        "tall": jax.ShapeDtypeStruct((48, 16), jnp.float32)}, rng)
    done = muon.orthogonalize_by_shape(tree, jnp.asarray((3.4445, -4.775, 2.0315)), 5)
    for name, matrix in done.items():
        assert matrix.shape == tree[name].shape
        singular = np.linalg.svd(np.asarray(matrix), compute_uv=False)
        assert singular.min() > 0.6 and singular.max() < 1.25, (name, singular)
