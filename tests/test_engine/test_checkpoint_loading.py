import argparse
import os
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, Runner

import mmvim  # noqa: F401  (installs the safe loader)
from mmvim.engine import load_checkpoint_file


class ToyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __len__(self):
        return 8

    def __getitem__(self, index):
        x = torch.tensor([index / 8., 1.])
        return dict(inputs=x, labels=x.sum().view(1))


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        labels = torch.stack(labels)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return list(zip(out, labels))


class ToyMetric(BaseMetric):

    def process(self, data_batch, data_samples):
        self.results.extend(((o - l)**2).item() for o, l in data_samples)

    def compute_metrics(self, results):
        return dict(mse=sum(results) / len(results))


def _runner(work_dir, max_iters, name, **kwargs):
    loader = dict(dataset=ToyDataset(), batch_size=2, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=True),
                  collate_fn=dict(type='pseudo_collate'))
    return Runner(
        model=ToyModel(), work_dir=str(work_dir), experiment_name=name,
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=100),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
        test_dataloader=dict(loader, sampler=dict(type='DefaultSampler',
                                                  shuffle=False)),
        test_cfg=dict(), test_evaluator=ToyMetric(),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                           by_epoch=False)),
        randomness=dict(seed=0), **kwargs)


def test_resume_and_test_mmengine_checkpoints(tmp_path):
    _runner(tmp_path, 4, 'first').train()
    ckpt = tmp_path / 'iter_4.pth'
    # the pinned torch refuses the Runner's own checkpoints by default ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    # ... mmvim's loader reads them with weights_only=True kept on
    assert 'message_hub' in load_checkpoint_file(str(ckpt))

    resumed = _runner(tmp_path, 6, 'resumed', resume=True)
    resumed.load_or_resume()
    assert resumed.iter == 4
    saved = torch.load(ckpt, weights_only=False)
    state = resumed.optim_wrapper.optimizer.state_dict()['state']
    torch.testing.assert_close(state[0]['momentum_buffer'],
                               saved['optimizer']['state'][0]['momentum_buffer'])
    resumed.train()
    assert resumed.iter == 6

    tester = _runner(tmp_path, 6, 'test', load_from=str(tmp_path / 'iter_6.pth'))
    metrics = tester.test()
    saved = torch.load(tmp_path / 'iter_6.pth',
                       weights_only=False)['state_dict']
    torch.testing.assert_close(tester.model.linear.weight,
                               saved['linear.weight'])
    # the metric of the loaded weights over all 8 items, computed here
    data = [ToyDataset()[i] for i in range(len(ToyDataset()))]
    x = torch.stack([d['inputs'] for d in data])
    y = torch.stack([d['labels'] for d in data])
    pred = x @ saved['linear.weight'].T + saved['linear.bias']
    assert metrics['mse'] == pytest.approx(((pred - y)**2).mean().item(),
                                           rel=1e-5)


def test_released_container_loads(official_checkpoint):
    path = official_checkpoint('vim-ti', 0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    assert isinstance(checkpoint['args'], argparse.Namespace)
    assert checkpoint['model']['pos_embed'].shape == (1, 197, 192)


EXECUTED = []


def _payload():
    EXECUTED.append(True)


class Malicious:

    def __reduce__(self):
        return (_payload, ())


class AttributeProbe:

    def __reduce__(self):
        return (getattr, (argparse.Namespace, '__subclasses__'))


def test_arbitrary_pickles_stay_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': Malicious()}, path)
    with pytest.raises(RuntimeError, match=r'refusing to load .*evil.pth: it '
                       r'holds .*_payload, outside the weights-only safe '
                       r'set'):
        CheckpointLoader.load_checkpoint(str(path))
    assert not EXECUTED
    # getattr is allowed for mmengine's HistoryBuffer methods only
    torch.save({'x': AttributeProbe()}, path)
    with pytest.raises(RuntimeError, match='refusing to load'):
        load_checkpoint_file(str(path))
    # the allow-list is scoped to mmvim's loader, not installed globally
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


def test_corrupt_checkpoint_is_named_and_kept(tmp_path):
    good = tmp_path / 'iter_2.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, good)
    bad = tmp_path / 'iter_4.pth'
    bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    size = os.path.getsize(bad)
    with pytest.raises(RuntimeError, match='iter_4.pth is corrupt, truncated '
                       'or not a PyTorch file'):
        load_checkpoint_file(str(bad))
    assert os.path.getsize(bad) == size and good.exists()
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint_file(str(tmp_path / 'missing.pth'))


def test_a_file_that_is_no_checkpoint_is_called_corrupt_not_unsafe(tmp_path):
    """A file torch cannot even parse is not a safety question: no advice
    to load it with weights_only=False."""
    path = tmp_path / 'x.pth'
    path.write_text('garbage\n')
    with pytest.raises(RuntimeError) as error:
        load_checkpoint_file(str(path))
    message = str(error.value)
    assert 'x.pth is corrupt, truncated or not a PyTorch file' in message
    assert 'safe set' not in message and 'weights_only=False' not in message
