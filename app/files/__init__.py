"""The file service: the tree of files and folders, versions, uploads and downloads."""
