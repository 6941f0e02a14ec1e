"""Image data for gaplab: folders of photos or a built-in generated dataset, as uint8 arrays.

This is the public entry point; each idea lives in its own module and is re-exported here:

* `load_image_folder(root, image_size)` (`gaplab.folders`) reads `root/<class>/*.jpg` or split
  folders (`train/val/test`, `train/test`, `train/val`, `train/` alone); the folder docstring says
  how missing splits are drawn. Images are decoded once, in parallel (`gaplab.images`), and
  cached on disk (`gaplab.cache`), so a second load of the same folder decodes nothing.
* `generate_shapes(image_size, n_images, seed)` (`gaplab.shapes`) draws six classes of shapes. It
  needs no download and is the default.
* `dataset_from_arrays` and `stratified_split` (`gaplab.splits`) split arrays as folders are split.

Every source gives the same `Dataset` (`gaplab.dataset`); bad input raises `DataError`.
"""

from gaplab.cache import default_cache_dir
from gaplab.dataset import DEFAULT_SPLIT, SPLIT_NAMES, DataError, Dataset, Split
from gaplab.folders import ACCEPTED_LAYOUTS, FolderListing, list_image_folder, load_image_folder
from gaplab.images import IMAGE_EXTENSIONS, decode_files, decode_image
from gaplab.shapes import BUILTIN_NAME, DEFAULT_IMAGE_SIZE, DEFAULT_IMAGES, SHAPE_CLASSES, generate_shapes
from gaplab.splits import dataset_from_arrays, stratified_split

__all__ = [
    "ACCEPTED_LAYOUTS", "BUILTIN_NAME", "DEFAULT_IMAGES", "DEFAULT_IMAGE_SIZE", "DEFAULT_SPLIT", "DataError",
    "Dataset", "FolderListing", "IMAGE_EXTENSIONS", "SHAPE_CLASSES", "SPLIT_NAMES", "Split", "dataset_from_arrays",
    "decode_files", "decode_image", "default_cache_dir", "generate_shapes", "list_image_folder", "load_image_folder",
    "stratified_split",
]
