"""The datasets the trainer reads and the shape (C, H, W) of each one's images, without torch: the
compiler checks a model file's ``source.dataset`` and input shape against them."""

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10")
# each dataset's image shape (C, H, W): its reader refuses images of any other
IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
