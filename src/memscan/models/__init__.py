"""Generative models: one folder per family, and the shared pieces around them.

* ``ddpm/``, ``stylegan2/`` — the families (config, networks, schedule/sampler or loss, model); a new family
  is a new folder plus one line in :data:`memscan.models.registry.FAMILIES`;
* ``registry.py`` — family names → packages, presets (:func:`~memscan.models.registry.preset_names`);
* ``base.py``     — :class:`~memscan.models.base.GenerativeModel`, what a family offers the loop;
* ``train.py``    — :func:`~memscan.models.train.train_model`: options checked, then the shared loop;
* ``sample.py``   — :func:`~memscan.models.sample.sample_model`: seeded sampling into a dataset folder;
* ``folder.py``   — the model folder contract and :func:`~memscan.models.folder.load_model`;
* ``checkpoint.py`` (safetensors format, exact resume), ``data.py`` (data on the device), ``scaling.py``
  (stored units ↔ ``[-1, 1]``), ``device.py`` (device, speed settings, autocast), ``rng.py`` (seeded
  noise), ``ema.py`` (weight averaging), ``augment.py`` (ADA), ``grids.py`` (sample grids).

Nothing is imported here: ``import memscan.models`` stays cheap (torch and MONAI load with a family).
"""
