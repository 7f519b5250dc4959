"""fairseq user-dir: ``--user-dir fairseq_plugins`` (or ``import fairseq_plugins``) registers the
``encouraging_ls`` criterion, the ``translation_encouraging`` task and its architectures, makes
fairseq checkpoints load under torch's ``weights_only=True`` and refuses the ones that are corrupt
or whose config fairseq would run as code, and reports the user's mistakes in one line."""
import warnings

from . import checkpoints, config_literals, criterions, distributed_cpu, errors, models, tasks  # noqa: F401

errors.install_excepthook()
config_literals.install_literal_only_eval()
# fairseq 0.12 calls hydra APIs that hydra 1.3 deprecates, on every run: a dozen lines of warnings
# on stderr that no user can act on, and that would bury a one-line error.
warnings.filterwarnings("ignore", category=UserWarning, module=r"hydra(\.|$)")
warnings.filterwarnings("ignore", message=r"\s*'config' is validated against ConfigStore", category=UserWarning)
