import subprocess
import sys
import textwrap

import pytest
from mmengine.registry import DefaultScope

import mmvim  # noqa: F401

SCOPES = ['mmpretrain', 'mmseg', 'mmdet']


@pytest.mark.parametrize('scope', SCOPES)
def test_bare_names_build_under_every_scope(scope):
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    with DefaultScope.overwrite_default_scope(scope):
        backbone = registry.MODELS.build(
            dict(type='Vim', arch=dict(embed_dims=16, depth=2)))
        assert type(backbone).__name__ == 'Vim'
        constructor = registry.OPTIM_WRAPPER_CONSTRUCTORS.get(
            'VimLayerDecayOptimWrapperConstructor')
        assert constructor is not None


def test_custom_imports_in_a_fresh_process(tmp_path):
    """A config's custom_imports alone (no `import mmvim`) registers Vim."""
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent("""
        custom_imports = dict(imports=['mmvim'], allow_failed_imports=False)
        model = dict(type='Vim', arch=dict(embed_dims=16, depth=2),
                     out_type='featmap')
    """))
    script = textwrap.dedent(f"""
        import sys
        from mmengine.config import Config
        from mmengine.registry import DefaultScope
        assert 'mmvim' not in sys.modules
        cfg = Config.fromfile({str(config)!r})
        for scope in {SCOPES!r}:
            registry = __import__(scope + '.registry', fromlist=['MODELS'])
            with DefaultScope.overwrite_default_scope(scope):
                model = registry.MODELS.build(cfg.model)
            print(scope, type(model).__name__)
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ['mmpretrain', 'Vim', 'mmseg', 'Vim', 'mmdet', 'Vim']
