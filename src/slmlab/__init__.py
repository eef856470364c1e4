"""slmlab: train, sample, evaluate and compare spoken language models on the same data and metrics."""

import logging


class _DropTorchaoExtensionNotice(logging.Filter):
    """torchao 0.13 (the version torchtune 0.6.1 needs) logs at import that its C++ extensions do not
    match torch 2.9.1 (the version moshi needs). Nothing slmlab runs uses them and a user cannot act on
    it, so this one message is dropped; every other torchao message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(
            "Skipping import of cpp extensions due to incompatible"
        )


logging.getLogger("torchao").addFilter(_DropTorchaoExtensionNotice())
