/**
 * A screenshot decoded by pngjs into RGBA, and the pixel statistics that tell
 * a painted page from a blank one.
 */
import { PNG } from 'pngjs';

export interface DecodedPng {
  width: number;
  height: number;
  /** RGBA, 4 bytes a pixel, row after row */
  rgba: Buffer;
}

/** Any PNG pngjs reads (every bit depth, colour type and interlacing), normalised to 8-bit RGBA. */
export function decodePng(png: Buffer): DecodedPng {
  const { width, height, data } = PNG.sync.read(png);
  return { width, height, rgba: data };
}

export interface PixelStats {
  /** standard deviation of luma (0–255): 0 for a blank image */
  lumaStdDev: number;
  distinctColors: number;
  /** pixels of exactly each requested colour ('#rrggbb') */
  counts: Record<string, number>;
}

export function pixelStats(image: DecodedPng, colors: readonly string[] = []): PixelStats {
  const wanted = new Map(colors.map((c) => [parseInt(c.slice(1), 16), c]));
  const counts: Record<string, number> = Object.fromEntries(colors.map((c) => [c, 0]));
  const distinct = new Set<number>();
  let sum = 0;
  let sumSquares = 0;
  const n = image.width * image.height;
  for (let i = 0; i < n * 4; i += 4) {
    const [r, g, b] = [image.rgba[i]!, image.rgba[i + 1]!, image.rgba[i + 2]!];
    const rgb = (r << 16) | (g << 8) | b;
    distinct.add(rgb);
    const name = wanted.get(rgb);
    if (name) counts[name]! += 1;
    const luma = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    sum += luma;
    sumSquares += luma * luma;
  }
  const mean = sum / n;
  return { lumaStdDev: Math.sqrt(Math.max(0, sumSquares / n - mean * mean)), distinctColors: distinct.size, counts };
}
