"""A literal transcription of the released RISE insertion/deletion metric (UCDvision/CGC,
``RISE/evaluation.py``: ``gkern``, ``auc``, ``CausalMetric.evaluate``), on the CPU, for the tests
that hold ``semisup.eval.insertion`` to it. Test-only code: slow by design (one image batch per step)."""
import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def gkern(klen, nsig):
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((3, 3, klen, klen))
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    return torch.from_numpy(kern.astype('float32'))


def auc(arr):
    return (arr.sum() - arr[0] / 2 - arr[-1] / 2) / (arr.shape[0] - 1)


class CausalMetric:
    def __init__(self, model, mode, step, substrate_fn, hw, n_classes):
        assert mode in ['del', 'ins']
        self.model, self.mode, self.step, self.substrate_fn = model, mode, step, substrate_fn
        self.HW, self.n_classes = hw, n_classes

    def evaluate(self, img_batch, exp_batch, batch_size):
        HW = self.HW
        n_samples = img_batch.shape[0]
        predictions = torch.FloatTensor(n_samples, self.n_classes)
        for i in range(n_samples // batch_size):
            preds = self.model(img_batch[i * batch_size:(i + 1) * batch_size]).cpu()
            predictions[i * batch_size:(i + 1) * batch_size] = preds
        if n_samples % batch_size != 0:
            start_index = n_samples // batch_size
            preds = self.model(img_batch[start_index * batch_size:]).cpu()
            predictions[start_index * batch_size:] = preds
        top = np.argmax(predictions, -1)
        n_steps = (HW + self.step - 1) // self.step
        scores = np.empty((n_steps + 1, n_samples))
        salient_order = np.flip(np.argsort(exp_batch.reshape(-1, HW), axis=1), axis=-1)
        r = np.arange(n_samples).reshape(n_samples, 1)
        substrate = torch.zeros_like(img_batch)
        for j in range(n_samples // batch_size):
            substrate[j * batch_size:(j + 1) * batch_size] = self.substrate_fn(img_batch[j * batch_size:(j + 1) * batch_size])
        if n_samples % batch_size != 0:
            start_index = n_samples // batch_size
            substrate[start_index * batch_size:] = self.substrate_fn(img_batch[start_index * batch_size:])
        if self.mode == 'del':
            start = img_batch.clone()
            finish = substrate
        elif self.mode == 'ins':
            start = substrate
            finish = img_batch.clone()
        for i in range(n_steps + 1):
            for j in range(n_samples // batch_size):
                preds = self.model(start[j * batch_size:(j + 1) * batch_size])
                preds = preds.cpu().numpy()[range(batch_size), top[j * batch_size:(j + 1) * batch_size]]
                scores[i, j * batch_size:(j + 1) * batch_size] = preds
            if n_samples % batch_size != 0:
                start_index = n_samples // batch_size
                preds = self.model(start[start_index * batch_size:])
                preds = preds.cpu().numpy()[range(n_samples % batch_size), top[start_index * batch_size:]]
                scores[i, start_index * batch_size:] = preds
            coords = salient_order[:, self.step * i:self.step * (i + 1)]
            start.cpu().numpy().reshape(n_samples, 3, HW)[r, :, coords] = finish.cpu().numpy().reshape(n_samples, 3, HW)[r, :, coords]
        return scores
