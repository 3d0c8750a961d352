import jax
import jax.numpy as jnp
import numpy as np

from alsa_jax import compilation


def test_counter_counts_compilations_and_not_reuse():
    f = jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)
    a, b, c = np.ones(3, np.float32), np.zeros(3, np.float32), np.ones(4, np.float32)
    with compilation.CompileCounter() as counter:
        f(a)
        f(b)  # same shape: compiled once
        f(c)  # a new shape: compiled again
    assert counter.backend_compiles == 2 and counter.compiled == 2
    assert counter.cache_hits == 0 and counter.seconds > 0
    with compilation.CompileCounter() as later:
        f(c)
    assert later.backend_compiles == 0


def test_a_program_compiled_once_is_loaded_from_the_persistent_cache(tmp_path):
    def program():  # a new jitted function each time: nothing shared in memory
        return jax.jit(lambda x: jnp.cumsum(jnp.cos(x) ** 3 - 0.25))

    x = np.arange(7, dtype=np.float32)
    before = jax.config.jax_compilation_cache_dir
    with compilation.persistent_cache(str(tmp_path / "cache")):
        with compilation.CompileCounter() as cold:
            first = program()(x)
        with compilation.CompileCounter() as warm:
            second = program()(x)
        entries = list((tmp_path / "cache").iterdir())
    assert jax.config.jax_compilation_cache_dir == before  # restored after the block
    assert cold.compiled == 1 and entries  # small and quick programs are cached too
    assert warm.backend_compiles == 1 and warm.cache_hits == 1 and warm.compiled == 0
    np.testing.assert_array_equal(first, second)
    with compilation.CompileCounter() as off:  # the cache is off again: compiled anew
        program()(x)
    assert off.compiled == 1
