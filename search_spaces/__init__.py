"""Search spaces written as text: the distributions of a study file's space and of --space (the
studies themselves are the files in studies/)."""
