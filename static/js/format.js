// Numbers and dates for people: decimal sizes, time left, ISO timestamps to the minute.

export function human(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function duration(seconds) {
  if (!isFinite(seconds)) return "…";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.ceil(seconds % 60)} s`;
}

// "2031-01-01T12:00:00+00:00" -> "2031-01-01 12:00"
export function minute(iso) {
  return iso.slice(0, 16).replace("T", " ");
}
